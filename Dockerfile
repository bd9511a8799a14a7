# Memplane API (REST on 8080, gRPC on 50051) against an external Postgres and Redis.
# See docker-compose.yml for a complete stack; the service applies its database
# migrations itself at start.
FROM node:20-bookworm-slim

WORKDIR /app

# Dependencies first, so a source change reuses this layer. Development
# dependencies are needed: the build runs prisma, buf and tsc, and the service
# applies migrations at start with Prisma's WebAssembly schema engine. Install
# scripts stay off, as in development: Prisma's would download engines the
# service does not use, and embedded Postgres is not used with DATABASE_URL.
COPY package.json package-lock.json ./
RUN npm ci --ignore-scripts && npm cache clean --force

# `npm run build` = prisma generate + buf generate (both offline) + tsc into dist/.
COPY . .
RUN npm run build

ENV MEMPLANE_LISTEN_HOST=0.0.0.0 \
    MEMPLANE_HTTP_PORT=8080 \
    MEMPLANE_GRPC_PORT=50051
EXPOSE 8080 50051

USER node
CMD ["node", "dist/apps/api/src/main.js"]
