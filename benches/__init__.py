"""fastloss's asv benchmark suite: ``asv run --config benches/asv.conf.json`` (see asv.conf.json)."""
