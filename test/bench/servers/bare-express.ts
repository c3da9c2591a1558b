// The reference for ingest throughput: a bare express 5 JSON endpoint doing nothing but parse and answer.
import express from 'express';

const app = express();
app.use(express.json());
let seen = 0;
app.post('/v1/reports', (req, res) => {
  seen += Array.isArray(req.body) ? req.body.length : 1;
  res.status(202).json({ accepted: 1, ids: [String(seen)] });
});
app.get('/readyz', (_req, res) => {
  res.json({ status: 'ready' });
});
app.listen(Number(process.env.PORT), '127.0.0.1');
process.on('SIGTERM', () => process.exit(0));
