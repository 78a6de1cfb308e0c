from services.label_join.app import main

main()
