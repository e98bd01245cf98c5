// Reference ids from Hugging Face tokenizers (Rust core, node binding) for corpus.json, and its speed on text files.
const { Tokenizer } = require('tokenizers');
const fs = require('fs');
(async () => {
  const tok = Tokenizer.fromFile(process.argv[2]);
  const cases = JSON.parse(fs.readFileSync(process.argv[3], 'utf8'));
  const out = { library: 'tokenizers (npm, Rust core) ' + require('tokenizers/package.json').version, cases: [] };
  for (const c of cases) {
    const e = await tok.encode(c, null, { addSpecialTokens: false });
    out.cases.push({ text: c, ids: Array.from(e.getIds()) });
  }
  out.speed = [];
  for (const f of process.argv.slice(5)) {
    const text = fs.readFileSync(f, 'utf8'); const lines = text.split('\n').filter(l => l.length);
    const bytes = Buffer.byteLength(text, 'utf8');
    let best = 1e9, n = 0;
    for (let r = 0; r < 3; r++) {
      const t0 = process.hrtime.bigint(); n = 0;
      for (const l of lines) { const e = await tok.encode(l, null, { addSpecialTokens: false }); n += e.getIds().length; }
      best = Math.min(best, Number(process.hrtime.bigint() - t0) / 1e9);
    }
    out.speed.push({ file: f.split('/').pop(), bytes, tokens: n, seconds: best, MB_per_s: bytes / best / 1e6 });
  }
  fs.writeFileSync(process.argv[4], JSON.stringify(out));
  console.log(JSON.stringify(out.speed), out.cases.length, 'cases');
})();
