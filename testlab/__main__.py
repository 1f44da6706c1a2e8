from testlab.cli.main import main

main()
