#!/usr/bin/env bash
# An echo bot in shell over `palaver listen --json`: answers every direct message with "echo: TEXT".
# Run it beside the bot user's daemon:  PALAVER_HOME=~/bot examples/echo-bot.sh   (needs jq)
set -euo pipefail
palaver=${PALAVER:-palaver}
me=$("$palaver" --json whoami | jq -r .name)
"$palaver" --json listen | while read -r event; do
  [ "$(jq -r .type <<<"$event")" = message ] || continue
  from=$(jq -r .from <<<"$event")
  # Direct messages only (a room's conversation is "#room"), and never our own.
  [ "$from" != "$me" ] && [ "$(jq -r .conversation <<<"$event")" = "$from" ] || continue
  "$palaver" send "$from" "echo: $(jq -r .text <<<"$event")" >/dev/null
done
