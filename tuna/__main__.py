from tuna.cli import main

main()
