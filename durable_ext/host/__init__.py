"""The local Functions host: loads function_app.py, serves triggers, starts Azurite."""
