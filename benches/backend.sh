# Sourced by the benchmark scripts: the backend every path ends at, nginx answering
# `return 200` with a 1 KiB body, so that every script measures against the same one.
# For large bodies it also serves `GET /bulk` (1 MiB from a file) and takes `POST /upload`
# (up to 2 MiB, read and dropped, then 200).

# backend_config DIR ADDR: writes DIR/nginx.conf for a backend listening on ADDR
# (host:port; run it with `nginx -c DIR/nginx.conf -p DIR`) and DIR/bulk. nginx's workers
# read DIR/bulk: when nginx runs as root they run as nobody, so every directory above DIR
# must be searchable by others (chmod o+x).
backend_config() {
  local dir=$1 addr=$2 body
  body=$(head -c 1024 /dev/zero | tr '\0' 'x')
  mkdir -p "$dir"
  head -c 1048576 /dev/urandom >"$dir/bulk"
  chmod a+rx "$dir"
  chmod a+r "$dir/bulk"
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
    location = /bulk { default_type application/octet-stream; alias $dir/bulk; }
    location = /upload { client_max_body_size 2m; return 200; }
  }
}
CONF
}
