"""spark-submit entry points of the Spark branch (``preprocess.py``, ``detect.py``) and their shared helpers."""
