from tuna_recipes.cli import entry

entry()
