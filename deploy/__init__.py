"""Deployment files: the nginx config template and the local cluster demo."""
