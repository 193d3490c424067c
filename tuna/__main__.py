from tuna.cli import entry

entry()
