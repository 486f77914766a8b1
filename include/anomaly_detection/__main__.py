from anomaly_detection.cli import main

raise SystemExit(main())
