/**
 * Build vmm's container image (Containerfile) as an OCI layout, without a
 * container daemon: the tools are umoci's (Debian `umoci`).
 *
 * The image is `FROM scratch`: the single executable of scripts/build-exe.ts
 * (which carries the default guest) at /usr/bin/vmm, the dynamic loader and
 * the glibc libraries `ldd` names for it, copied at the paths the loader
 * looks in, and an empty /tmp (1777) where the guest is unpacked on first
 * use. A Bun executable needs nothing else: no /etc, no shell.
 *
 * This script stages that root as `rootfs/` in a build context, then applies
 * the Containerfile's instructions with umoci: `init` and `new` make an empty
 * image (FROM scratch), `insert` adds each COPY as a layer, one `config`
 * sets ENV, ENTRYPOINT, CMD and the rest, and `gc` drops what the steps left
 * unreferenced. The Containerfile stays the one description of the image: a
 * daemon or buildah builds the same thing from the context (`--context`).
 *
 * Usage: bun scripts/build-image.ts [--exe dist/vmm] [--layout dist/oci]
 *          [--tag latest] [--context DIR]
 * Without --exe it builds dist/vmm first (scripts/build-exe.ts).
 */
import { execFileSync } from "node:child_process";
import { chmodSync, copyFileSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import process from "node:process";

const root = fileURLToPath(new URL("..", import.meta.url));

/** Where the executable goes in the image; the Containerfile's ENTRYPOINT names it. */
export const IMAGE_EXE = "/usr/bin/vmm";

/** The image settings of a Containerfile, as build-image.ts understands it. */
export interface ImageRecipe {
  /** COPY: a path in the build context and where it goes in the image. */
  copies: { src: string; dest: string }[];
  env: string[];
  entrypoint?: string[];
  cmd?: string[];
  workdir?: string;
  user?: string;
  labels: string[];
}

/**
 * Reads a Containerfile that builds `FROM scratch`. Only what this image
 * needs is understood: COPY from the context, ENV, exec-form ENTRYPOINT and
 * CMD, WORKDIR, USER, LABEL; anything else is an error rather than ignored.
 *
 * @example
 * ```ts
 * import { parseContainerfile } from "./build-image.ts";
 * const r = parseContainerfile('FROM scratch\nCOPY rootfs/ /\nENTRYPOINT ["/usr/bin/vmm"]\n');
 * console.log(r.entrypoint); // ["/usr/bin/vmm"]
 * ```
 */
export function parseContainerfile(text: string): ImageRecipe {
  const r: ImageRecipe = { copies: [], env: [], labels: [] };
  let from = false;
  text.split("\n").forEach((raw, i) => {
    const line = raw.trim();
    if (line === "" || line.startsWith("#")) return;
    const fail = (why: string) => new SyntaxError(`Containerfile:${i + 1}: ${why}`);
    if (line.endsWith("\\")) throw fail("line continuations are not supported");
    const m = /^(\w+)\s+(.*)$/.exec(line);
    if (!m) throw fail(`cannot read "${line}"`);
    const [op, arg] = [m[1].toUpperCase(), m[2].trim()];
    if (!from && op !== "FROM") throw fail(`${op} before FROM`);
    const words = () => arg.split(/\s+/);
    const exec = (): string[] => {
      let v: unknown;
      try {
        v = JSON.parse(arg);
      } catch { /* reported below */ }
      if (!Array.isArray(v) || !v.every((s) => typeof s === "string")) throw fail(`${op} must be a JSON array of strings`);
      return v;
    };
    switch (op) {
      case "FROM":
        if (from || arg !== "scratch") throw fail("only one FROM scratch is supported");
        from = true;
        break;
      case "COPY": {
        const w = words();
        if (w.length !== 2 || w[0].startsWith("--")) throw fail("COPY takes one source and one destination");
        r.copies.push({ src: w[0], dest: w[1] });
        break;
      }
      case "ENV":
        for (const kv of words()) {
          if (!/^[A-Za-z_][A-Za-z0-9_]*=\S*$/.test(kv)) throw fail(`ENV takes NAME=VALUE pairs: ${kv}`);
          r.env.push(kv);
        }
        break;
      case "LABEL":
        r.labels.push(...words());
        break;
      case "ENTRYPOINT":
        r.entrypoint = exec();
        break;
      case "CMD":
        r.cmd = exec();
        break;
      case "WORKDIR":
        r.workdir = arg;
        break;
      case "USER":
        r.user = arg;
        break;
      default:
        throw fail(`${op} is not supported by scripts/build-image.ts`);
    }
  });
  if (!from) throw new SyntaxError("Containerfile: no FROM scratch");
  return r;
}

/**
 * The files an executable needs from the host's glibc, from `ldd`: the
 * loader by its PT_INTERP path, each library where the loader found it.
 */
export function linkedFiles(exe: string): string[] {
  const out = execFileSync("ldd", [exe], { encoding: "utf8" });
  const files: string[] = [];
  for (const line of out.split("\n")) {
    // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)" or "/lib64/ld-linux-x86-64.so.2 (0x…)";
    // linux-vdso.so.1 has no file.
    const m = /(?:=>\s*)?(\/\S+)\s+\(0x[0-9a-f]+\)/.exec(line);
    if (m) files.push(m[1]);
    else if (/not found/.test(line)) throw new Error(`ldd ${exe}: ${line.trim()}`);
  }
  if (!files.some((f) => /\/ld-linux[^/]*\.so/.test(f))) throw new Error(`ldd ${exe}: no dynamic loader named`);
  return files;
}

/**
 * Stages the Containerfile's build context in `dir`: `rootfs/` with the
 * executable, its glibc files (copied, symlinks resolved, at the paths ldd
 * gave) and /tmp.
 */
export function stageContext(exe: string, dir: string): void {
  const rootfs = join(dir, "rootfs");
  rmSync(rootfs, { recursive: true, force: true });
  const put = (src: string, dest: string, mode: number) => {
    mkdirSync(dirname(join(rootfs, dest)), { recursive: true, mode: 0o755 });
    copyFileSync(src, join(rootfs, dest));
    chmodSync(join(rootfs, dest), mode);
  };
  put(exe, IMAGE_EXE, 0o755);
  for (const f of linkedFiles(exe)) put(f, f, 0o755);
  mkdirSync(join(rootfs, "tmp"));
  // Every directory 0755 and /tmp 1777, whatever the umask made them.
  const walk = (d: string) => {
    chmodSync(d, d === join(rootfs, "tmp") ? 0o1777 : 0o755);
    for (const e of readdirSync(d, { withFileTypes: true })) if (e.isDirectory()) walk(join(d, e.name));
  };
  walk(rootfs);
}

export interface BuildImageOptions {
  /** The single executable to put in (scripts/build-exe.ts). */
  exe: string;
  /** The OCI layout directory; replaced. */
  layout: string;
  /** Its tag (default "latest"). */
  tag?: string;
  /** Keep the build context here (default: a temporary directory, removed). */
  context?: string;
  /** The Containerfile (default the repository's). */
  containerfile?: string;
}

export interface BuiltImage {
  /** `LAYOUT:TAG`, as umoci, skopeo (`oci:LAYOUT:TAG`) and runc's tools name it. */
  ref: string;
  layout: string;
  tag: string;
  /** Bytes of the layout directory (compressed layers, manifest, config). */
  bytes: number;
  /** Bytes of the staged root before compression. */
  rootfsBytes: number;
}

/**
 * Builds the image into an OCI layout and returns where it is.
 *
 * @example
 * ```ts
 * import { buildImage } from "./build-image.ts";
 * const img = buildImage({ exe: "dist/vmm", layout: "dist/oci" });
 * console.log(img.ref, img.bytes); // "dist/oci:latest" 38000000
 * ```
 */
export function buildImage(opts: BuildImageOptions): BuiltImage {
  const tag = opts.tag ?? "latest";
  const layout = resolve(opts.layout);
  const recipe = parseContainerfile(readFileSync(opts.containerfile ?? join(root, "Containerfile"), "utf8"));
  const ctx = opts.context ? resolve(opts.context) : mkdtempSync(join(tmpdir(), "vmm-image-"));
  try {
    mkdirSync(ctx, { recursive: true });
    stageContext(resolve(opts.exe), ctx);
    const ref = `${layout}:${tag}`;
    const umoci = (...args: string[]) => execFileSync("umoci", args, { stdio: ["ignore", "ignore", "inherit"] });
    // With SOURCE_DATE_EPOCH the image's dates are that time, so one input gives one digest.
    const epoch = process.env.SOURCE_DATE_EPOCH;
    const when = epoch ? new Date(Number(epoch) * 1000).toISOString() : undefined;
    const dated = (flag: string) => (when ? [flag, when] : []);
    rmSync(layout, { recursive: true, force: true });
    umoci("init", "--layout", layout);
    umoci("new", "--image", ref);
    recipe.copies.forEach((c, i) => {
      const src = resolve(ctx, c.src);
      if (!(src + "/").startsWith(ctx + "/")) throw new Error(`COPY ${c.src}: outside the build context`);
      const tar = join(ctx, `layer-${i}.tar`);
      layerTar(src, c.dest, tar);
      umoci("raw", "add-layer", "--image", ref, ...dated("--history.created"), "--history.created_by", `COPY ${c.src} ${c.dest}`, tar);
      rmSync(tar);
    });
    const cfg = ["config", "--image", ref, ...dated("--created"), ...dated("--history.created")];
    cfg.push("--history.created_by", "scripts/build-image.ts: Containerfile");
    for (const e of recipe.env) cfg.push("--config.env", e);
    if (recipe.entrypoint) cfg.push("--clear=config.entrypoint", ...recipe.entrypoint.flatMap((a) => ["--config.entrypoint", a]));
    if (recipe.cmd) cfg.push("--clear=config.cmd", ...recipe.cmd.flatMap((a) => ["--config.cmd", a]));
    if (recipe.workdir) cfg.push("--config.workingdir", recipe.workdir);
    if (recipe.user) cfg.push("--config.user", recipe.user);
    for (const l of recipe.labels) cfg.push("--config.label", l);
    umoci(...cfg);
    umoci("gc", "--layout", layout);
    return { ref, layout, tag, bytes: treeBytes(layout), rootfsBytes: treeBytes(join(ctx, "rootfs")) };
  } finally {
    if (!opts.context) rmSync(ctx, { recursive: true, force: true });
  }
}

/**
 * Writes the layer of `COPY src dest` as an uncompressed tar, with GNU tar:
 * `umoci insert` (0.4.7, Debian bookworm) ends a layer without tar's padding
 * and end-of-archive blocks (opencontainers/umoci#436), which its own unpack
 * and runc accept but `tar` and layer scanners reject. Entries are sorted,
 * owned by root and dated SOURCE_DATE_EPOCH (default 0), so the same inputs
 * give the same layer.
 */
function layerTar(src: string, dest: string, out: string): void {
  const epoch = process.env.SOURCE_DATE_EPOCH ?? "0";
  const under = dest.replace(/^\/+|\/+$/g, "");
  const args = ["-cf", out, "-C", src, "--format=gnu", "--sort=name", "--owner=0", "--group=0", "--numeric-owner", `--mtime=@${epoch}`];
  if (!statSync(src).isDirectory()) throw new Error(`COPY ${src}: only directories are supported`);
  // A directory's contents go under dest: "./usr/bin/vmm" becomes "usr/bin/vmm" for "/".
  args.push(`--transform=s,^\\./,${under ? under + "/" : ""},`, ".");
  execFileSync("tar", args, { stdio: ["ignore", "ignore", "inherit"] });
}

function treeBytes(p: string): number {
  const st = statSync(p);
  if (!st.isDirectory()) return st.size;
  return readdirSync(p).reduce((n, e) => n + treeBytes(join(p, e)), 0);
}

if (import.meta.main) {
  const { values } = parseArgs({
    options: {
      exe: { type: "string" },
      layout: { type: "string", default: `${root}dist/oci` },
      tag: { type: "string", default: "latest" },
      context: { type: "string" },
    },
  });
  try {
    let exe = values.exe;
    if (!exe) {
      const { ensureDefaultGuest } = await import("../guest/build.ts");
      const { buildExe } = await import("./build-exe.ts");
      await ensureDefaultGuest({ log: (s) => console.error(`build-image: ${s}`) });
      exe = buildExe("dist/vmm");
    }
    const img = buildImage({ exe, layout: values.layout, tag: values.tag, context: values.context });
    const mb = (n: number) => (n / 1e6).toFixed(1);
    console.error(`build-image: ${img.ref}: ${mb(img.bytes)} MB as an OCI layout (${mb(img.rootfsBytes)} MB unpacked)`);
    console.log(img.ref);
  } catch (e) {
    console.error(`build-image: ${(e as Error).message.split("\n")[0]}`);
    process.exit(1);
  }
}
