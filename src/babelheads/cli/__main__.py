from babelheads.cli import main

main()
