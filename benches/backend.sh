# Sourced by the benchmark scripts: the backend every path ends at, nginx answering
# `return 200` with a 1 KiB body, so that every script measures against the same one.

# backend_config DIR ADDR: writes DIR/nginx.conf for a backend listening on ADDR
# (host:port; run it with `nginx -c DIR/nginx.conf -p DIR`).
backend_config() {
  local dir=$1 addr=$2 body
  body=$(head -c 1024 /dev/zero | tr '\0' 'x')
  mkdir -p "$dir"
  cat >"$dir/nginx.conf" <<CONF
worker_processes 1;
daemon off;
master_process on;
error_log $dir/error.log warn;
pid $dir/nginx.pid;
events { worker_connections 8192; }
http {
  access_log off;
  keepalive_requests 1000000;
  server {
    listen $addr backlog=4096;
    location / { default_type text/plain; return 200 "$body"; }
  }
}
CONF
}
