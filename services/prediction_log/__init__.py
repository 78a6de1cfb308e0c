"""prediction_log: the offline store of every prediction served (Parquet, Hive-partitioned)."""
