# Sourced by bench/run.sh and bench/experiments/ab.sh: how the bench starts
# the server under test, so that both measure the same thing.

# free_port: a free loopback port (closed again before the server binds it).
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# spawn_server CONNECTIONS_BIN DATABASE_URL PORT LOG [FLAG...]: `connections
# serve` in the background as the bench runs it: authentication on, as users
# run it; no rate limit and room for many streams per caller (the load
# generator is one caller); no REST listener. Extra environment for the
# server (e.g. TOKIO_WORKER_THREADS=1) comes from SERVER_ENV, as words.
# The server's pid is in $! afterwards.
spawn_server() {
  local bin=$1 url=$2 port=$3 log=$4
  shift 4
  # shellcheck disable=SC2086 # SERVER_ENV is a list of NAME=value words
  env -u SERVER_ENV ${SERVER_ENV:-} RUST_LOG=warn "$bin" serve --database-url "$url" \
    --listen "127.0.0.1:$port" --http-listen off --rate-limit 0 \
    --max-streams-per-caller 1000 "$@" >"$log" 2>&1 &
}
