# syntax=docker/dockerfile:1
# One image for every banbus service: `banbus run SERVICE` picks the service (docker-compose.yml does).
# Build: docker build -t banbus .

ARG NODE_IMAGE=node:22-bookworm-slim

# --- build: install everything, compile the TypeScript, then drop the development dependencies.
FROM ${NODE_IMAGE} AS build
WORKDIR /app
COPY . .
# --ignore-scripts: no dependency needs an install script to run banbus (the ones that have one belong
# to test tools), and the build below is the workspace's own `prepare`.
RUN npm ci --no-audit --no-fund --ignore-scripts \
 && npm run build \
 && npm prune --omit=dev --no-audit --no-fund --ignore-scripts \
 && rm -rf packages/*/test services/*/test test

# --- runtime: node, the compiled workspaces, and the kernel tools the route-applier drives.
FROM ${NODE_IMAGE} AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends iproute2 ipset nftables \
 && rm -rf /var/lib/apt/lists/* \
 && install -d -o node -g node -m 0750 /var/lib/banbus
ENV NODE_ENV=production
WORKDIR /app
COPY --from=build /app/package.json /app/package-lock.json ./
COPY --from=build /app/node_modules ./node_modules
COPY --from=build /app/packages ./packages
COPY --from=build /app/services ./services
COPY --from=build /app/migrations ./migrations
# Every service runs as the unprivileged `node` user; only the route-applier (NET_ADMIN) is started as
# root by its compose entry / systemd unit.
USER node
# The 3CX importer keeps its cursor here; mount a volume on it.
VOLUME ["/var/lib/banbus"]
ENTRYPOINT ["node", "packages/cli/bin/banbus.js"]
CMD ["run", "all"]
