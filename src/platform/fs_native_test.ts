import { assert, assertEquals, assertThrows } from "../../tests/assert.ts";
import { DirReader, lstatNs, rawOf } from "./fs_native.ts";

Deno.test("DirReader lists and stats as Deno and lstatNs do, across many getdents calls", () => {
  const root = Deno.makeTempDirSync({ prefix: "keep-dirreader-" });
  try {
    // ~3,000 long names: several 64 KiB getdents buffers.
    const names = [".hidden", "...", "..x", "é", "😀 space", "\uFF01"];
    for (let i = 0; i < 3000; i++) names.push(`file-${"n".repeat(40)}-${i}`);
    for (const n of names) Deno.writeTextFileSync(`${root}/${n}`, n);
    Deno.mkdirSync(`${root}/sub`);
    Deno.symlinkSync("é", `${root}/link`);
    Deno.utimeSync(`${root}/é`, new Date(-1_500), new Date(-1_500)); // before the epoch
    const dir = DirReader.open(root);
    assert(dir, "DirReader is available on Linux x86_64/aarch64 with FFI");
    try {
      const listed = dir.names();
      const expected = [...Deno.readDirSync(root)].map((d) => d.name);
      assertEquals([...listed].sort(), [...expected].sort());
      assertEquals(listed.length, names.length + 2);
      for (const n of listed) {
        assertEquals(dir.stat(n), rawOf(lstatNs(`${root}/${n}`)), n);
      }
      assertEquals(dir.stat("no-such-file"), null);
      const e = dir.stat("é")!;
      assertEquals([e.mtimeSec, e.mtimeNs], [-2, 500_000_000]);
      assertEquals(dir.stat("link")!.kind, "symlink");
      assertEquals(dir.stat("sub")!.kind, "dir");
    } finally {
      dir.close();
    }
    assertThrows(() => DirReader.open(`${root}/missing`), Deno.errors.NotFound);
    assertThrows(() => DirReader.open(`${root}/sub/../é`), Error);
  } finally {
    Deno.removeSync(root, { recursive: true });
  }
});
