"""spark-submit entry file of the Spark preprocess job; the job is :mod:`anomaly_detection.spark.jobs.preprocess`."""

import sys

from anomaly_detection.spark.jobs.preprocess import main

if __name__ == "__main__":
    sys.exit(main())
