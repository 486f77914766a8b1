"""Dynamic Anomaly Detection: turn any REST JSON API into a reviewed anomaly report.

The package imports neither Airflow nor pyspark; each pipeline stage is its own module.
"""

__version__ = "0.1.0"
