"""The application, on top of every other package: the entry point (main.py), the option table
(config.py) and the module table that builds what -target asks for (modules.py). Nothing below
imports from here."""
