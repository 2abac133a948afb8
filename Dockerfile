# StreamSpace v2 control-plane image: one image, three entry points (see docker-compose.yml):
#   node dist/api/main.js          API gateway (8080) + agent WebSocket hub (8081)  [default]
#   node dist/workers/main.js      Temporal worker
#   node dist/agents/docker/main.js  Docker agent
#   node dist/db/cli.js up         schema migrations (npm run db:migrate)
FROM node:20-bookworm-slim AS build
WORKDIR /app
# Dependencies first, so source edits do not invalidate the npm ci layer.
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund --loglevel=error
COPY . .
# tsc + the Temporal workflow bundle; then drop dev dependencies from node_modules.
RUN npm run build && npm prune --omit=dev --no-audit --no-fund

FROM node:20-bookworm-slim
# No secrets and no dev mode in the image: the processes refuse to start until JWT_SECRET,
# AGENT_TOKEN_SECRET, DB_PASSWORD, ADMIN_PASSWORD (first start) or AGENT_TOKEN are given at run time.
ENV NODE_ENV=production STREAMSPACE_DEV_MODE=false
WORKDIR /app
# ca-certificates: TLS to external databases/Temporal Cloud; the slim image lacks it.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build --chown=node:node /app/package.json /app/package-lock.json ./
COPY --from=build --chown=node:node /app/node_modules ./node_modules
COPY --from=build --chown=node:node /app/dist ./dist
COPY --from=build --chown=node:node /app/migrations ./migrations
USER node
EXPOSE 8080 8081
# The gateway with a 64 MB young generation (the VNC relay's buffers; README "Capacity").
CMD ["node", "--max-semi-space-size=64", "dist/api/main.js"]
