// Starts the NocoDB installed by `make nocodb-test` (var/nocodb) on PORT, meta data in SQLite
// under the current directory. Used only by the optional real-NocoDB test.
const http = require("http");
const express = require("express");
const { Noco } = require("nocodb");

(async () => {
  const app = express();
  const server = http.createServer(app);
  app.use(await Noco.init({}, server, app));
  server.listen(Number(process.env.PORT), "127.0.0.1", () => console.log(`nocodb listening on ${process.env.PORT}`));
})().catch((err) => { console.error(err); process.exit(1); });
