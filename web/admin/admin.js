// The admin pages: team management, audit log and supervision.
"use strict";
