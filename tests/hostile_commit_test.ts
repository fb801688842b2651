/**
 * Hostile uploads against the commit protocol: a crafted upload that is
 * accepted (the control case), change lists (drop, del, keep records for
 * paths that are not there), meta records naming content the project never
 * had, parent directories missing from the result, the parent commit (409)
 * and malformed commit headers. The common checks are in tests/hostile.ts.
 */

import { join } from "node:path";
import { assertEquals } from "./assert.ts";
import {
  commitHeader,
  concat,
  extHeader,
  metaRecord,
  noise,
  paxRecord,
  T0,
  Upload,
  ustarBlock,
} from "./craft.ts";
import { keep, keepOk, snapshot, tempDir, writeTree } from "./helpers.ts";
import {
  assertError,
  type CommitJson,
  commitsUrl,
  type Ctx,
  getJson,
  headId,
  hostile,
  MiB,
  onHead,
  P,
  post,
  refuse,
  setUp,
  sha256,
  tmpFiles,
} from "./hostile.ts";

Deno.test("control: an upload built by craft.ts is accepted and restores as crafted", async () => {
  await using c = await setUp();
  const big = noise(3 * MiB + 123, 7); // several members, and a blob through tmp/
  const body = onHead(c)
    .file("big.bin", big)
    .file("dir/file.txt", "changed\n", { mode: 0o600 })
    .dir("dir/new")
    .file("dir/new/n.txt", "n\n")
    .symlink("lnk2", "dir/file.txt")
    .changes([
      { op: "del", p: "dir/sub/deep.txt" },
      { op: "del", p: "dir/sub" },
      metaRecord({ p: "README.md", s: 6, m: 0o640, h: sha256("hello\n") }),
    ])
    .end();
  // The layout src/client/upload.ts writes: control, entries, control, end; data in
  // members of at most 1 MiB.
  assertEquals(body.parts.map((p) => p.label), [
    "commit:header",
    "commit:data0",
    "entry:big.bin:header",
    "entry:big.bin:data0",
    "entry:big.bin:data1",
    "entry:big.bin:data2",
    "entry:big.bin:data3",
    "entry:dir/file.txt:header",
    "entry:dir/file.txt:data0",
    "entry:dir/new:header",
    "entry:dir/new/n.txt:header",
    "entry:dir/new/n.txt:data0",
    "entry:lnk2:header",
    "changes:header",
    "changes:data0",
    "end",
  ]);
  const a = await post(commitsUrl(c), body.bytes());
  assertEquals(a.status, 201, a.text);
  const commit = (a.body as { commit: CommitJson }).commit;
  assertEquals(commit.parent, c.head.id);
  assertEquals(await headId(c), commit.id);
  assertEquals(tmpFiles(c), []);
  const dest = join(await tempDir(), "out");
  await keepOk(["restore", dest], 0, { env: c.env });
  const snap = snapshot(dest);
  assertEquals(Object.keys(snap).sort(), [
    "README.md",
    "big.bin",
    "dir",
    "dir/file.txt",
    "dir/new",
    "dir/new/n.txt",
    "lnk",
    "lnk2",
  ]);
  assertEquals(Deno.readFileSync(join(dest, "big.bin")), big);
  assertEquals(Deno.readTextFileSync(join(dest, "dir/file.txt")), "changed\n");
  assertEquals(snap["dir/file.txt"].mode, 0o600);
  assertEquals(snap["README.md"].mode, 0o640);
  assertEquals(snap["dir/new/n.txt"].mtime, String(T0));
  assertEquals(snap["lnk2"].target, "dir/file.txt");
  const v = await keep(["verify", "--data", c.server.dataDir]);
  assertEquals(v.code, 0, v.stdout + v.stderr);
});

// ---- change list ----------------------------------------------------------

hostile("refuses a change list that drops a path never sent", async (c) => {
  await refuse(
    c,
    "drop of a path nowhere",
    onHead(c).file("a.txt", "a").changes([{ op: "drop", p: "ghost.txt", reason: "x" }]).end(),
    400,
    "invalid",
    /drop record for "ghost\.txt" names no sent file/,
  );
  await refuse(
    c,
    "drop of a parent path not sent",
    onHead(c).changes([{ op: "drop", p: "README.md", reason: "x" }]).end(),
    400,
    "invalid",
    /drop record for "README\.md" names no sent file/,
  );
});

hostile("refuses a change list that deletes a path not in the parent", async (c) => {
  await refuse(
    c,
    "del ghost.txt",
    onHead(c).changes([{ op: "del", p: "ghost.txt" }]).end(),
    400,
    "invalid",
    /deleted path "ghost\.txt" is not in the parent commit/,
  );
  await refuse(
    c,
    "del lnk/file.txt (through the symlink)",
    onHead(c).changes([{ op: "del", p: "lnk/file.txt" }]).end(),
    400,
    "invalid",
    /deleted path "lnk\/file\.txt" is not in the parent commit/,
  );
});

hostile("refuses a keep record for a path not in the parent, as for a deletion", async (c) => {
  await refuse(
    c,
    "keep ghost.txt",
    onHead(c).changes([{ op: "keep", p: "ghost.txt", flag: "unreadable", reason: "x" }]).end(),
    400,
    "invalid",
    /keep record for "ghost\.txt" names a path the parent commit does not have/,
  );
});

/** Backs up a second project holding `secret.txt`; returns that content's hash. */
async function otherProject(c: Ctx): Promise<string> {
  const other = await tempDir();
  const secret = "the other project's secret\n";
  writeTree(other, { "secret.txt": secret });
  await keepOk(["backup", "--settle", "0", "-p", "other", other], 0, { env: c.env });
  return sha256(secret);
}

hostile("refuses a meta record naming content the project never had", async (c) => {
  const foreign = await otherProject(c);
  await refuse(
    c,
    "meta with an unknown hash",
    onHead(c).changes([metaRecord({ p: "README.md", s: 6, h: "ab".repeat(32) })]).end(),
    400,
    "invalid",
    /metadata record for "README\.md" names content the project never had/,
  );
  await refuse(
    c,
    "meta with another project's hash",
    onHead(c).changes([metaRecord({ p: "README.md", s: 27, h: foreign })]).end(),
    400,
    "invalid",
    /names content the project never had/,
  );
  // The blob stays out of reach of this project.
  const a = await getJson(`${c.url}/v1/projects/${P}/blobs/${foreign}`);
  assertError(a, 404, "not_found", undefined, "GET the other project's blob");
});

hostile("refuses a size-0 meta record naming another project's content", async (c) => {
  const foreign = await otherProject(c);
  // A hash on an empty file would make the project "have" that content: GET blobs/:hash serves it.
  await refuse(
    c,
    "meta s=0 with another project's hash",
    onHead(c).changes([metaRecord({ p: "README.md", s: 0, h: foreign })]).end(),
    400,
    "invalid",
    /content/,
  );
  const a = await getJson(`${c.url}/v1/projects/${P}/blobs/${foreign}`);
  assertError(a, 404, "not_found", undefined, "GET the other project's blob");
});

hostile("refuses a meta record for a directory or symlink carrying a content hash", async (c) => {
  const foreign = await otherProject(c);
  await refuse(
    c,
    "meta dir with another project's hash",
    onHead(c).changes([metaRecord({ p: "dir", t: "d", m: 0o755, h: foreign })]).end(),
    400,
    "invalid",
  );
  await refuse(
    c,
    "meta symlink with another project's hash",
    onHead(c).changes([metaRecord({ p: "lnk", t: "l", m: 0o777, l: "dir", h: foreign })]).end(),
    400,
    "invalid",
  );
  const a = await getJson(`${c.url}/v1/projects/${P}/blobs/${foreign}`);
  assertError(a, 404, "not_found", undefined, "GET the other project's blob");
});

hostile("refuses a meta record whose size disagrees with the content it names", async (c) => {
  // README.md holds "hello\n" (6 bytes); a manifest entry of 100 bytes for it cannot be restored.
  await refuse(
    c,
    "meta README.md s=100 with its own 6-byte content",
    onHead(c).changes([metaRecord({ p: "README.md", s: 100, h: sha256("hello\n") })]).end(),
    400,
    "invalid",
  );
  await refuse(
    c,
    "meta README.md s=1 with its own 6-byte content",
    onHead(c).changes([metaRecord({ p: "README.md", s: 1, h: sha256("hello\n") })]).end(),
    400,
    "invalid",
  );
});

hostile("refuses a file whose parent directory is missing from the new commit", async (c) => {
  await refuse(
    c,
    "newdir/x.txt without newdir",
    onHead(c).file("newdir/x.txt", "x").changes().end(),
    400,
    "invalid",
    /"newdir\/x\.txt" has no parent directory/,
  );
  await refuse(
    c,
    "dir deleted, a new file below it sent",
    onHead(c).file("dir/new.txt", "x").changes([
      { op: "del", p: "dir" },
      { op: "del", p: "dir/file.txt" },
      { op: "del", p: "dir/sub" },
      { op: "del", p: "dir/sub/deep.txt" },
    ]).end(),
    400,
    "invalid",
    /"dir\/new\.txt" has no parent directory/,
  );
  await refuse(
    c,
    "dir/sub deleted while dir/sub/deep.txt stays",
    onHead(c).changes([{ op: "del", p: "dir/sub" }]).end(),
    400,
    "invalid",
    /"dir\/sub" is deleted or not a directory but still has entries below it/,
  );
  await refuse(
    c,
    "dir/sub replaced by a file while dir/sub/deep.txt stays",
    onHead(c).file("dir/sub", "now a file").changes().end(),
    400,
    "invalid",
    /"dir\/sub" is deleted or not a directory but still has entries below it/,
  );
  await refuse(
    c,
    "meta for a file below a file",
    onHead(c).changes([metaRecord({ p: "README.md/x", s: 6, h: sha256("hello\n") })]).end(),
    400,
    "invalid",
    /"README\.md\/x" has no parent directory/,
  );
});

// ---- commit header --------------------------------------------------------

hostile("refuses an unknown parent commit id with 409 conflict", async (c) => {
  const with_ = (parent: string | null) =>
    new Upload().commit(commitHeader(parent)).file("a.txt", "a").changes().end();
  await refuse(c, "parent 0123456789abcdef", with_("0123456789abcdef"), 409, "conflict", /parent/);
  await refuse(c, "a prefix of the head", with_(c.head.id.slice(0, 8)), 409, "conflict");
  await refuse(c, "parent ../../etc", with_("../../etc"), 409, "conflict");
});

hostile("refuses a malformed commit header", async (c) => {
  const hdr = (h: Record<string, unknown> | string) =>
    new Upload().commit(h).file("a.txt", "a").changes().end();
  const head = c.head.id;
  const cases: [string, Upload, RegExp][] = [
    ["not JSON", hdr('{"format": 1, "parent": '), /commit header is not JSON/],
    ["a JSON array", hdr("[1, 2]"), /unknown commit header format/],
    ["JSON null", hdr("null"), /commit header/],
    ["format 2", hdr(commitHeader(head, { format: 2 })), /unknown commit header format/],
    ["parent a number", hdr(commitHeader(head, { parent: 42 })), /field parent/],
    ["scanTime not ns", hdr(commitHeader(head, { scanTime: "soon" })), /ns integers/],
    ["tags an array", hdr(commitHeader(head, { tags: ["a"] })), /tags must be an object/],
    ["tag not a string", hdr(commitHeader(head, { tags: { a: 1 } })), /tags must map/],
    ["message too long", hdr(commitHeader(head, { message: "m".repeat(70000) })), /message/],
    ["host missing", hdr(commitHeader(head, { host: undefined })), /field host/],
    ["no commit header", new Upload().file("a.txt", "a").changes().end(), /commit header/],
    [
      "commit header as a directory",
      new Upload().raw(
        concat([
          extHeader(paxRecord("comment", "keep:1 control=commit")),
          ustarBlock({ name: ".keep-commit.json", typeflag: "5" }),
        ]),
      ).file("a.txt", "a").changes().end(),
      /must start with the commit header/,
    ],
    [
      "commit header over 1 MiB",
      hdr(commitHeader(head, { pad: "p".repeat(MiB + 10) })),
      /must start with the commit header/,
    ],
    ["no change list", new Upload().commit(commitHeader(head)).file("a.txt", "a").end(), /change/],
  ];
  for (const [what, body, msg] of cases) await refuse(c, what, body, 400, "invalid", msg);
  await refuse(c, "empty body", new Uint8Array(0), 400, "invalid");
});
