from services.prediction_log.app import main

main()
