from gorl.analysis.notebook import main

main()
