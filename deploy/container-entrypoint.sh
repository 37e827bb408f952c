#!/bin/sh
# Entrypoint of the predictd image: migrate, install the shipped models, then become the daemon.
# Each step is safe to repeat on every start: `db upgrade` does nothing at the schema head, and `models install`
# keeps a model already in models.dir (it may be the site's own retrained one).
set -eu

CONFIG=/etc/predictd/predictd.toml

# 1. Bring the database (SQLite on the volume, or PostgreSQL from PREDICTD_DATABASE__URL) to the schema head:
#    `serve` refuses to start on any other revision.
predictd --config "$CONFIG" db upgrade

# 2. Copy the shipped models into models.dir on the volume (only those not there yet).
predictd --config "$CONFIG" models install

# 3. Replace this shell with the daemon, so it is the process `docker stop` sends SIGTERM to.
exec predictd --config "$CONFIG" serve
