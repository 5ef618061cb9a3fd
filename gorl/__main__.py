from gorl.cli import main

main()
