"""Development and test tooling: the demo API, the Airflow REST client, SQLite settings.

Not part of the shipped package and never zipped to Spark."""
