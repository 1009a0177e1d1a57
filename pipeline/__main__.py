from pipeline.ui.launch import main

main()
