#!/bin/sh
# The demo app the example requests work on.
echo "demo-app 1.0"
