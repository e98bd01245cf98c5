const { Tokenizer } = require('tokenizers'); const fs = require('fs');
(async () => {
  const tok = Tokenizer.fromFile('tokenizer.json'); const res = [];
  for (const f of process.argv.slice(2)) {
    const text = fs.readFileSync(f, 'utf8'); const lines = text.split('\n').filter(l => l.length);
    const bytes = Buffer.byteLength(text, 'utf8'); let best = 1e9, n = 0;
    for (let r = 0; r < 5; r++) {
      const t0 = process.hrtime.bigint();
      const es = await tok.encodeBatch(lines, { addSpecialTokens: false }); n = 0; for (const e of es) n += e.getIds().length;
      best = Math.min(best, Number(process.hrtime.bigint() - t0) / 1e9);
    }
    res.push({ file: f.split('/').pop(), bytes, tokens: n, seconds: best, MB_per_s: bytes / best / 1e6, threads: process.env.RAYON_NUM_THREADS });
  }
  console.log(JSON.stringify(res));
})();
