from invfp.cli import main

main()
