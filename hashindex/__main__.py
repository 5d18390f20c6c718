from hashindex.cli.main import main

main()
