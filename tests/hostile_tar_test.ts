/**
 * Hostile uploads at the tar level: entry paths (`..`, absolute, through a
 * symlink, duplicates, order, NUL, bad UTF-8), header checksums and entry
 * types, declared sizes against the data sent and against --max-upload, and
 * extended headers (pax, GNU long names) over their limits. The common checks
 * are in tests/hostile.ts.
 */

import {
  bytesOf,
  commitHeader,
  concat,
  extHeader,
  metaRecord,
  noise,
  noiseText,
  paxRecord,
  Upload,
  ustarBlock,
} from "./craft.ts";
import { hostile, MiB, onHead, refuse, sha256 } from "./hostile.ts";

// ---- paths ----------------------------------------------------------------

hostile("refuses tar entries with .. components", async (c) => {
  const cases: [string, Upload][] = [
    ["../evil.txt", onHead(c).file("../evil.txt", "x").changes().end()],
    ["dir/../../evil.txt", onHead(c).file("dir/../../evil.txt", "x").changes().end()],
    ["dir ..", onHead(c).dir("..").changes().end()],
    ["trailing dir/..", onHead(c).dir("dir/..").changes().end()],
    ["symlink ../up", onHead(c).symlink("../up", "x").changes().end()],
    ["dot component", onHead(c).file("./x", "x").changes().end()],
    ["empty component", onHead(c).file("dir//x", "x").changes().end()],
    [
      "ustar prefix ..",
      onHead(c).raw(ustarBlock({ prefix: "..", name: "evil.txt", size: 1 }), bytesOf("x"))
        .changes().end(),
    ],
    ["del ../README.md", onHead(c).changes([{ op: "del", p: "../README.md" }]).end()],
    [
      "meta ../x",
      onHead(c).changes([metaRecord({ p: "../x", s: 6, h: sha256("hello\n") })]).end(),
    ],
  ];
  for (const [what, body] of cases) {
    await refuse(c, what, body, 400, "invalid", /"\.{0,2}" component/);
  }
});

hostile("refuses absolute paths", async (c) => {
  const cases: [string, Upload][] = [
    ["/etc/passwd", onHead(c).file("/etc/passwd", "root::0:0::/:/bin/sh\n").changes().end()],
    ["//x", onHead(c).file("//x", "x").changes().end()],
    ["dir /tmp", onHead(c).dir("/tmp").changes().end()],
    ["dir /", onHead(c).dir("/").changes().end()],
    ["symlink /abs", onHead(c).symlink("/abs", "x").changes().end()],
    [
      "ustar prefix /etc",
      onHead(c).raw(ustarBlock({ prefix: "/etc", name: "passwd", size: 1 }), bytesOf("x"))
        .changes().end(),
    ],
    ["del /etc/passwd", onHead(c).changes([{ op: "del", p: "/etc/passwd" }]).end()],
    ["drop /x", onHead(c).changes([{ op: "drop", p: "/x", reason: "" }]).end()],
  ];
  for (const [what, body] of cases) {
    await refuse(c, what, body, 400, "invalid", /absolute path/);
  }
});

hostile("refuses a path through a symlink entry of the same upload", async (c) => {
  await refuse(
    c,
    "symlink a, then file a/x",
    onHead(c).symlink("a", "/tmp").file("a/x", "through the link\n").changes().end(),
    400,
    "invalid",
    /"a\/x" has no parent directory/,
  );
  await refuse(
    c,
    "symlink b -> ., then dir b/c",
    onHead(c).symlink("b", ".").dir("b/c").changes().end(),
    400,
    "invalid",
    /"b\/c" has no parent directory/,
  );
});

hostile("refuses a path through a symlink of the parent commit", async (c) => {
  // BASE has lnk -> dir.
  await refuse(
    c,
    "file lnk/evil.txt",
    onHead(c).file("lnk/evil.txt", "x").changes().end(),
    400,
    "invalid",
    /"lnk\/evil\.txt" has no parent directory/,
  );
  await refuse(
    c,
    "dir lnk/sub",
    onHead(c).dir("lnk/sub").changes().end(),
    400,
    "invalid",
    /"lnk\/sub" has no parent directory/,
  );
  await refuse(
    c,
    "dir replaced by a symlink while its entries remain",
    onHead(c).symlink("dir", "/etc").changes().end(),
    400,
    "invalid",
    /"dir" is deleted or not a directory but still has entries below it/,
  );
});

hostile("refuses duplicate paths", async (c) => {
  await refuse(
    c,
    "file twice",
    onHead(c).file("x.txt", "one").file("x.txt", "two").changes().end(),
    400,
    "invalid",
    /duplicate path/,
  );
  await refuse(
    c,
    "dir twice",
    onHead(c).dir("d").dir("d").changes().end(),
    400,
    "invalid",
    /duplicate path/,
  );
  await refuse(
    c,
    "dir d and dir d/ (trailing slash)",
    onHead(c).dir("d").raw(ustarBlock({ name: "d//", typeflag: "5", mode: 0o755 })).changes()
      .end(),
    400,
    "invalid",
    /duplicate path/,
  );
  await refuse(
    c,
    "sent and deleted",
    onHead(c).file("README.md", "new").changes([{ op: "del", p: "README.md" }]).end(),
    400,
    "invalid",
    /appears twice/,
  );
  await refuse(
    c,
    "sent and meta",
    onHead(c).file("README.md", "new")
      .changes([metaRecord({ p: "README.md", s: 6, h: sha256("hello\n") })]).end(),
    400,
    "invalid",
    /appears twice/,
  );
  await refuse(
    c,
    "deleted twice",
    onHead(c).changes([{ op: "del", p: "README.md" }, { op: "del", p: "README.md" }]).end(),
    400,
    "invalid",
    /appears twice/,
  );
});

hostile("refuses entries out of order", async (c) => {
  await refuse(
    c,
    "b then a",
    onHead(c).file("b", "b").file("a", "a").changes().end(),
    400,
    "invalid",
    /entries out of order/,
  );
  await refuse(
    c,
    "child before its directory",
    onHead(c).file("dir/z", "z").dir("dir").changes().end(),
    400,
    "invalid",
    /entries out of order/,
  );
  // UTF-8 byte order: U+FF00 (EF BC 80) sorts before U+1F600 (F0 9F 98 80); UTF-16 says the opposite.
  await refuse(
    c,
    "UTF-16 order instead of UTF-8 order",
    onHead(c).file("\u{1F600}.txt", "a").file("\uFF00.txt", "b").changes().end(),
    400,
    "invalid",
    /entries out of order/,
  );
  await refuse(
    c,
    "an entry before the commit header",
    new Upload().file("a.txt", "a").commit(commitHeader(c.head.id)).changes().end(),
    400,
    "invalid",
    /must start with the commit header/,
  );
  await refuse(
    c,
    "an entry after the change list",
    onHead(c).changes().file("z.txt", "z").end(),
    400,
    "invalid",
    /entry after the change list/,
  );
  await refuse(
    c,
    "a second commit header among the entries",
    onHead(c).file("a.txt", "a").commit(commitHeader(c.head.id)).changes().end(),
    400,
    "invalid",
    /unexpected control entry commit/,
  );
});

hostile("refuses names with NUL (raw header bytes)", async (c) => {
  await refuse(
    c,
    "pax path a\\0b",
    onHead(c).raw(
      concat([
        extHeader(paxRecord("path", "evil\0.txt")),
        ustarBlock({ name: "evil", size: 1 }),
      ]),
      bytesOf("x"),
    ).changes().end(),
    400,
    "invalid",
    /path contains NUL/,
  );
  await refuse(
    c,
    "ustar name field starting with NUL",
    onHead(c).raw(ustarBlock({ name: "\0etc/passwd", size: 1 }), bytesOf("x")).changes().end(),
    400,
    "invalid",
    /empty path/,
  );
  await refuse(
    c,
    "ustar name field with invalid UTF-8",
    onHead(c).raw(ustarBlock({ name: new Uint8Array([0x61, 0xff, 0xfe]), size: 1 }), bytesOf("x"))
      .changes().end(),
    400,
    "invalid",
    /not valid UTF-8/,
  );
  await refuse(
    c,
    "pax linkpath with NUL",
    onHead(c).raw(
      concat([
        extHeader(paxRecord("linkpath", "/etc\0x")),
        ustarBlock({ name: "l", typeflag: "2", mode: 0o777 }),
      ]),
    ).changes().end(),
    400,
    "invalid",
    /bad target/,
  );
  await refuse(
    c,
    "change record path with NUL",
    onHead(c).changes([{ op: "del", p: "README.md\0x" }]).end(),
    400,
    "invalid",
    /path contains NUL/,
  );
});

hostile("refuses tar headers with a bad checksum or an unsupported type", async (c) => {
  const entry = (block: Uint8Array, data?: Uint8Array) =>
    onHead(c).raw(block, data).changes().end();
  const good = ustarBlock({ name: "a.txt", size: 1 });
  const cases: [string, Upload, RegExp][] = [
    [
      "checksum off by one",
      entry(ustarBlock({ name: "a.txt", size: 1, checksum: 1 }), bytesOf("a")),
      /checksum mismatch/,
    ],
    [
      "checksum of another block",
      entry(withChecksumOf(good, ustarBlock({ name: "b.txt", size: 1 })), bytesOf("a")),
      /checksum mismatch/,
    ],
    [
      "checksum field not octal",
      entry(ustarBlock({ name: "a.txt", size: 1, checksum: bytesOf("12x4567") }), bytesOf("a")),
      /checksum field is not octal/,
    ],
    [
      "size field not octal",
      entry(ustarBlock({ name: "a.txt", size: "00000000009" }), bytesOf("a")),
      /size field is not octal/,
    ],
    [
      "hard link",
      entry(ustarBlock({ name: "h", typeflag: "1", linkname: "/etc/passwd" })),
      /hard link/,
    ],
    [
      "character device",
      entry(ustarBlock({ name: "tty", typeflag: "3" })),
      /unsupported entry type/,
    ],
    ["FIFO", entry(ustarBlock({ name: "fifo", typeflag: "6" })), /unsupported entry type/],
    [
      "directory with data",
      entry(ustarBlock({ name: "d/", typeflag: "5", size: 1 }), bytesOf("a")),
      /dir entry with data/,
    ],
  ];
  for (const [what, body, msg] of cases) await refuse(c, what, body, 400, "invalid", msg);
});

/** `block` carrying the checksum computed for `other`. */
function withChecksumOf(block: Uint8Array, other: Uint8Array): Uint8Array {
  const b = block.slice();
  b.set(other.subarray(148, 156), 148);
  return b;
}

// ---- sizes ----------------------------------------------------------------

hostile("refuses a header size shorter than the data", async (c) => {
  await refuse(
    c,
    "size 5, 100 bytes of data",
    onHead(c).file("a.txt", "0123456789".repeat(10), { size: 5 }).changes().end(),
    400,
    "invalid",
    /non-zero padding/,
  );
  await refuse(
    c,
    "size 0, 2 KiB of data",
    onHead(c).file("a.bin", noise(2048, 3), { size: 0 }).changes().end(),
    400,
    "invalid",
    /Cannot read archive/,
  );
});

hostile("refuses a header size longer than the data", async (c) => {
  await refuse(
    c,
    "size 100000, 100 bytes of data",
    onHead(c).file("a.txt", "x".repeat(100), { size: 100_000 }).changes().end(),
    400,
    "invalid",
    /truncated inside file data/,
  );
  // Big enough that the server spools the blob to tmp/ before it sees the end.
  await refuse(
    c,
    "size 5 MiB, 3 MiB of data",
    onHead(c).file("big.bin", noise(3 * MiB, 5), { size: 5 * MiB }).changes().end(),
    400,
    "invalid",
    /truncated inside file data/,
  );
});

hostile(
  "refuses a tar bomb: declared file sizes over --max-upload",
  async (c) => {
    await refuse(
      c,
      "one file declaring 2 MiB",
      onHead(c).file("zeros.bin", new Uint8Array(2 * MiB)).changes().end(),
      413,
      "too_large",
      /declared file sizes exceed the limit/,
    );
    await refuse(
      c,
      "three files of 400 KiB",
      onHead(c).file("a.bin", noise(400 * 1024, 1)).file("b.bin", noise(400 * 1024, 2))
        .file("c.bin", noise(400 * 1024, 3)).changes().end(),
      413,
      "too_large",
      /declared file sizes exceed the limit/,
    );
    await refuse(
      c,
      "a pax size of 1 TiB with 1 KiB of data",
      onHead(c).raw(
        concat([
          extHeader(paxRecord("size", String(1024 ** 4))),
          ustarBlock({ name: "huge.bin", size: 0 }),
        ]),
        new Uint8Array(1024),
      ).changes().end(),
      413,
      "too_large",
      /declared file sizes exceed the limit/,
    );
  },
  { args: ["--max-upload", "1M"] },
);

// ---- extended headers -----------------------------------------------------

hostile("refuses oversized extended headers", async (c) => {
  const big = paxRecord("comment", noiseText(64 * 1024 + 1, 4));
  const cases: [string, Uint8Array][] = [
    ["pax x over 64 KiB", extHeader(big, "x")],
    ["pax g over 64 KiB", extHeader(big, "g")],
    ["GNU L long name of 100 KiB", extHeader(bytesOf("n/".repeat(50 * 1024)), "L")],
    ["GNU K long link of 100 KiB", extHeader(bytesOf("n/".repeat(50 * 1024)), "K")],
    [
      "pax x declaring 8 GiB with no payload",
      ustarBlock({ name: "PaxHeaders/x", typeflag: "x", size: 0o77777777777 }),
    ],
  ];
  for (const [what, blocks] of cases) {
    const body = onHead(c, 0).raw(concat([blocks, ustarBlock({ name: "a.txt", size: 1 })]))
      .data(bytesOf("a")).changes().end();
    await refuse(c, what, body, 413, "too_large", /extended header of \d+ bytes/);
  }
});

hostile("refuses a chain of extended headers that adds up over the limit", async (c) => {
  // Each pax header is under the 64 KiB limit; together they hold 2 MiB for one entry.
  const chain: Uint8Array[] = [];
  for (let i = 0; i < 32; i++) {
    chain.push(extHeader(paxRecord(`KEEPTEST.k${i}`, noiseText(60 * 1024, i + 1)), "x"));
  }
  const body = onHead(c, 0).raw(concat([...chain, ustarBlock({ name: "a.txt", size: 1 })]))
    .data(bytesOf("a")).changes().end();
  await refuse(c, "32 pax headers of 60 KiB before one entry", body, 413, "too_large");
});
