from bench_client.cli import main

raise SystemExit(main())
