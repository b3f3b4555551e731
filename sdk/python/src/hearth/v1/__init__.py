"""Generated from proto/hearth/v1 by scripts/gen-python.sh. Do not edit."""
