"""The web UI's static files (HTML, CSS, JavaScript), package data read by appliance.web.static."""
