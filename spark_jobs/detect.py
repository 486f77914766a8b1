"""spark-submit entry file of the Spark detect job; the job is :mod:`anomaly_detection.spark.jobs.detect`."""

import sys

from anomaly_detection.spark.jobs.detect import main

if __name__ == "__main__":
    sys.exit(main())
