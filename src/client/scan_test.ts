import { join } from "node:path";
import { assert, assertEquals } from "../../tests/assert.ts";
import { comparePaths } from "../format/paths.ts";
import { scanTree } from "./scan.ts";

function tree(): string {
  const root = Deno.makeTempDirSync({ prefix: "keep-scan-" });
  const write = (p: string, text: string) => {
    Deno.mkdirSync(join(root, p, ".."), { recursive: true });
    Deno.writeTextFileSync(join(root, p), text);
  };
  for (let d = 0; d < 20; d++) {
    for (let f = 0; f < 30; f++) write(`d${d}/sub${f % 3}/f${f}.c`, `${d}/${f}`);
  }
  write(".backupignore", "*.o\n");
  write("d1/x.o", "o");
  write("d2/.backupignore", "!keep.o\n");
  write("d2/keep.o", "o");
  write("cache/CACHEDIR.TAG", "Signature: 8a477f597d28d172789f06886806bc55\n");
  write("cache/junk", "j");
  write("a-b", "dash sorts before a/");
  // Names whose subtrees sort away from their own entry, and UTF-8 order
  // (U+FF01 before an emoji, though JavaScript's < says otherwise).
  write("a/x", "x");
  write("a.d/y", "y");
  write("a0", "0");
  write("\uFF01", "fullwidth");
  write("😀/z", "z");
  write("é", "e");
  Deno.mkdirSync(join(root, "empty"));
  Deno.symlinkSync("d1", join(root, "link"));
  new Deno.Command("mkfifo", { args: [join(root, "fifo")] }).outputSync();
  return root;
}

Deno.test("scanTree gives the same result sequentially and with parallel listings and stats", async () => {
  const root = tree();
  const one = await scanTree(root, { jobs: 1 });
  const many = await scanTree(root, { jobs: 8 });
  assertEquals(many.entries.toArray(), one.entries.toArray());
  const paths0 = one.entries.toArray().map((e) => e.path);
  assertEquals(paths0, [...paths0].sort(comparePaths));
  assert(
    paths0.indexOf("a-b") < paths0.indexOf("a/x") && paths0.indexOf("a") < paths0.indexOf("a-b"),
  );
  assertEquals(many.problems, one.problems);
  assertEquals(many.granularity, one.granularity);
  // dirs, subdirs, files; then 2 ignore files, keep.o, cache/, its tag, a-b, empty/, link;
  // then a/, a/x, a.d/, a.d/y, a0, U+FF01, the emoji dir and its file, é
  assertEquals(one.entries.length, 20 + 20 * 3 + 600 + 8 + 9);
  const paths = one.entries.toArray().map((e) => e.path);
  assert(paths.includes("d2/keep.o") && !paths.includes("d1/x.o"));
  assert(paths.includes("cache/CACHEDIR.TAG") && !paths.includes("cache/junk"));
  assertEquals(paths.slice(0, 8), [
    ".backupignore",
    "a",
    "a-b",
    "a.d",
    "a.d/y",
    "a/x",
    "a0",
    "cache",
  ]);
  assertEquals(paths.slice(-3), ["é", "\uFF01", "😀", "😀/z"].slice(-3));
  assertEquals(one.problems.map((p) => [p.path, p.kind]), [["fifo", "skipped"]]);
  Deno.removeSync(root, { recursive: true });
});

Deno.test("scanTree without FFI (Deno's readDir and lstat, ms times) finds the same entries", async () => {
  const root = tree();
  try {
    const script = new URL("./scan.ts", import.meta.url).href;
    const code = `
      const { scanTree } = await import(${JSON.stringify(script)});
      const s = await scanTree(Deno.args[0]);
      console.log(JSON.stringify(s.entries.toArray().map((e) =>
        [e.path, e.type, e.size, e.mode, String(e.mtime / 1_000_000n), e.target ?? null])));
    `;
    const out = await new Deno.Command(Deno.execPath(), {
      args: [
        "eval",
        "--quiet",
        "--config",
        new URL("../../deno.json", import.meta.url).pathname,
        code,
        root,
      ],
      env: { KEEP_NO_FFI: "1" },
    }).output();
    assertEquals(out.code, 0, new TextDecoder().decode(out.stderr));
    const plain = JSON.parse(new TextDecoder().decode(out.stdout));
    const native = (await scanTree(root)).entries.toArray().map((
      e,
    ) => [e.path, e.type, e.size, e.mode, String(e.mtime / 1_000_000n), e.target ?? null]);
    assertEquals(plain, native);
  } finally {
    Deno.removeSync(root, { recursive: true });
  }
});
