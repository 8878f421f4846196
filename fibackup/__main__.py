from fibackup.cli import main

main()
