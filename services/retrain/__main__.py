from services.retrain.app import main

main()
