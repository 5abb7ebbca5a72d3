"""Studies that compare objectives side by side: `avalign experiment <name> --config file.yaml`."""
