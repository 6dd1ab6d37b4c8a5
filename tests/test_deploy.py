"""test_deploy.py -- s.yaml, Dockerfile and .dockerignore, checked without the cloud or Docker.

1. s.yaml is validated against the fc3 component's schema (shared/ref/fc3-schema.json), in a
   copy patched to relax exactly the stale parts listed in shared/ref/README.md, plus a typo
   guard (no property the schema does not declare). The commented variants in s.yaml
   (between `# >>>` and `# <<<`) are uncommented and validated too. The validator is shown
   to be real: broken copies (unknown prop, wrong type, bad enum) must fail, and the
   unpatched schema must reject exactly the fields the README says are stale.
2. The Dockerfile is parsed (ARG/FROM/ENV/COPY/USER/EXPOSE/HEALTHCHECK/ENTRYPOINT/CMD) and its
   structure checked: multi-stage with base images as ARGs, CPU variant, snapshot layer
   before the binary, non-root user, port 9000, the same entrypoint as s.yaml.
3. The image is emulated: ENTRYPOINT + CMD run exactly as written, with the Dockerfile's ENV,
   s.yaml's environmentVariables and the variables FC sets, after mapping paths that only
   exist in the image to the checkout (IMAGE_PATHS below; each mapped path must be a COPY
   destination in the final stage, so the mapping cannot drift from the Dockerfile). Then
   it replays `s local invoke` (wait for GET / to answer, POST /invoke with an OpenAI body as
   application/octet-stream), FC's Initializer, an HTTP-trigger streaming chat request (SSE,
   chunked), the HEALTHCHECK command and PreStop. Skipped with a line saying so when ./thaw
   has no `serve` command or the model is missing.
"""
import copy
import http.client
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time

from harness import check, skip, summary

try:
    import jsonschema
    import yaml
except ImportError as e:  # tests/requirements.txt lists them
    print(f"skipped: test_deploy needs python packages from tests/requirements.txt ({e})")
    sys.exit(0)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
THAW = os.path.join(ROOT, "thaw")
MODEL = os.path.join(ROOT, "models", "smollm2-135m-instruct.thaw")


# ---- 1. s.yaml against the fc3 schema ---------------------------------------------------

def find_ref_dir():
    # CI: the repo's shared/ is at ../shared relative to the repo root; a checkout that
    # carries shared/ inside the repo works too.
    for d in (os.path.join(ROOT, "..", "shared", "ref"), os.path.join(ROOT, "shared", "ref")):
        if os.path.isfile(os.path.join(d, "fc3-schema.json")):
            return os.path.normpath(d)
    return None


GPU_TYPES_EXTRA = ["fc.gpu.ada.1", "fc.gpu.ada.2", "fc.gpu.ada.3", "fc.gpu.hopper.1", "fc.gpu.xpu.1"]


def relax(schema):
    """A copy of the fc3 schema with exactly the stale parts of ref/README.md relaxed."""
    s = copy.deepcopy(schema)
    gpu = s["definitions"]["IGpuConfig"]["properties"]
    # gpuType: the enum lacks the Ada/Hopper/XPU types the service accepts
    gpu["gpuType"]["enum"] = sorted(set(gpu["gpuType"]["enum"]) | set(GPU_TYPES_EXTRA))
    # gpuMemorySize: Ada/Hopper cards take 49152 / 98304 (schema max 24576)
    gpu["gpuMemorySize"]["maximum"] = 98304
    # memorySize: GPU types take 65536 / 98304 (schema max 32768)
    s["properties"]["memorySize"]["maximum"] = 98304
    # diskSize: enum [512, 10240] is stale; larger values appear in official GPU examples
    disk = s["properties"]["diskSize"]
    del disk["enum"]
    disk["minimum"] = 512
    # customDomain: read by the component, absent from the schema
    s["properties"]["customDomain"] = {"type": "object"}
    return s


def strict(schema):
    """Typo guard: every object schema that declares properties (and says nothing about
    extra ones) rejects undeclared keys. The fc3 component ignores unknown props silently,
    so `instanceConcurency: 16` would deploy with the default of 1 without this."""
    s = copy.deepcopy(schema)

    def walk(node, top):
        if isinstance(node, dict):
            if "properties" in node and "additionalProperties" not in node and (top or node.get("type") == "object"):
                node["additionalProperties"] = False
            for k, v in node.items():
                if k not in ("if", "then", "else"):  # conditional parts only add `required`
                    walk(v, False)
        elif isinstance(node, list):
            for v in node:
                walk(v, False)

    walk(s, True)
    return s


def errors(schema, props):
    v = jsonschema.Draft7Validator(schema)
    return sorted(f"{'/'.join(map(str, e.absolute_path)) or '(props)'}: {e.message}" for e in v.iter_errors(props))


def variants(text):
    """s.yaml with each `# >>> ... # <<<` block uncommented in turn: {name: yaml text}."""
    out = {}
    lines = text.split("\n")
    starts = [i for i, l in enumerate(lines) if l.strip().startswith("# >>>")]
    for st in starts:
        name = lines[st].strip()[5:].split(":")[0].strip()
        end = next(i for i in range(st, len(lines)) if lines[i].strip() == "# <<<")
        new = list(lines)
        for i in range(st + 1, end):
            m = re.match(r"^(\s*)# (\s*[A-Za-z]+:.*|\s*- .*|\s+.*)$", lines[i])
            # only YAML lines are uncommented: `key:` / `- item` / deeper indentation
            if m and (re.match(r"^\s*[A-Za-z]+:", m.group(2)) or m.group(2).lstrip().startswith("- ")
                      or len(m.group(2)) - len(m.group(2).lstrip()) > 0):
                new[i] = m.group(1) + m.group(2)
        out[name] = "\n".join(new)
    return out


def function_props(doc):
    res = doc["resources"]
    check(len(res) == 1, "s.yaml: one resource", list(res))
    r = next(iter(res.values()))
    check(r.get("component") == "fc3", "s.yaml: component fc3", r.get("component"))
    return r["props"]


def test_syaml(schema_dir):
    schema = json.load(open(os.path.join(schema_dir, "fc3-schema.json")))
    relaxed, typo = relax(schema), strict(relax(schema))
    text = open(os.path.join(ROOT, "s.yaml")).read()
    doc = yaml.safe_load(text)
    check(str(doc.get("edition")) == "3.0.0", "s.yaml: edition 3.0.0", doc.get("edition"))
    props = function_props(doc)

    e = errors(relaxed, props)
    check(not e, "s.yaml validates against the relaxed fc3 schema", e)
    e = errors(typo, props)
    check(not e, "s.yaml has no property the schema does not declare", e)

    # the commented variants, uncommented, are valid too
    vs = variants(text)
    check(set(vs) == {"ossMountConfig", "provisionConfig"}, "s.yaml: the two commented variants", list(vs))
    for name, vtext in vs.items():
        vprops = function_props(yaml.safe_load(vtext))
        check(name in vprops, f"s.yaml variant {name}: uncommented", list(vprops))
        e = errors(typo, vprops)
        check(not e, f"s.yaml variant {name} validates", e)
        check(not ("provisionConfig" in vprops and "scalingConfig" in vprops),
              f"variant {name}: never provisionConfig and scalingConfig together")
    if "provisionConfig" in vs:
        pc = function_props(yaml.safe_load(vs["provisionConfig"]))["provisionConfig"]
        check(pc["alwaysAllocateCPU"] is False and pc["alwaysAllocateGPU"] is False,
              "provisionConfig variant is idle mode", pc)
    if "ossMountConfig" in vs:
        mp = function_props(yaml.safe_load(vs["ossMountConfig"]))["ossMountConfig"]["mountPoints"][0]
        check(mp.get("readOnly") is True, "OSS mount is read-only", mp)
        check("THAW_MODEL" in text and mp["mountDir"] in text.split("ossMountConfig")[0] + text,
              "THAW_MODEL documented pointing into the mount", mp["mountDir"])

    # the validator is real: each broken copy fails, for the reason planted
    def broken(mutate, what, needle):
        p = copy.deepcopy(props)
        mutate(p)
        e = errors(typo, p)
        check(any(needle in x for x in e), f"broken s.yaml ({what}) is rejected", e)

    broken(lambda p: p.__setitem__("instanceConcurency", 16), "unknown prop", "instanceConcurency")
    broken(lambda p: p["customContainerConfig"].__setitem__("prot", 9000), "unknown nested prop", "prot")
    broken(lambda p: p.__setitem__("timeout", "600"), "timeout as a string", "timeout")
    broken(lambda p: p["customContainerConfig"].__setitem__("port", "9000"), "port as a string", "port")
    broken(lambda p: p["gpuConfig"].__setitem__("gpuType", "fc.gpu.volta.1"), "unknown GPU type", "gpuType")
    broken(lambda p: p.__setitem__("instanceConcurrency", 500), "instanceConcurrency > 200", "instanceConcurrency")
    broken(lambda p: p.__setitem__("timeout", 90000), "timeout > 86400", "timeout")
    broken(lambda p: p["triggers"][0].__setitem__("triggerType", "https"), "bad trigger type", "triggerType")
    broken(lambda p: p["environmentVariables"].__setitem__("THAW_MAX_SEQS", 16), "env value not a string", "THAW_MAX_SEQS")
    broken(lambda p: p.pop("customContainerConfig"), "custom-container without its config", "customContainerConfig")
    # the relaxation is exactly what the README lists: the unpatched schema rejects this file
    # for gpuType/gpuMemorySize/memorySize (and nothing else)
    e = errors(schema, props)
    paths = sorted({x.split(":")[0] for x in e})
    check(paths == ["gpuConfig/gpuMemorySize", "gpuConfig/gpuType", "memorySize"],
          "unpatched schema fails only on the stale fields", e)
    p = copy.deepcopy(props)
    p["diskSize"] = 20480
    check(any(x.startswith("diskSize") for x in errors(schema, p)) and not errors(relaxed, p),
          "diskSize beyond the stale enum: rejected unpatched, accepted relaxed")
    p["customDomain"] = {"domainName": "auto"}
    check(not errors(relaxed, p) and not errors(typo, p), "customDomain accepted when relaxed")

    # the contract with thaw serve and FC
    ccc = props["customContainerConfig"]
    check(ccc["port"] == 9000, "port 9000", ccc["port"])
    check(ccc["healthCheckConfig"]["httpGetUrl"] == "/health", "health check on /health", ccc["healthCheckConfig"])
    check(1 <= ccc["healthCheckConfig"]["timeoutSeconds"] <= 3, "health check timeout 1-3 s")
    lc = props["instanceLifecycleConfig"]
    for hook, limit in (("initializer", 300), ("preStop", 90)):
        check(lc[hook].get("handler"), f"{hook} handler non-empty", lc[hook])
        check(0 < lc[hook]["timeout"] <= limit, f"{hook} timeout <= {limit}", lc[hook])
    check(props["timeout"] >= 300, "timeout long enough for LLM requests", props["timeout"])
    env = props["environmentVariables"]
    check(int(env["THAW_MAX_SEQS"]) == props["instanceConcurrency"],
          "instanceConcurrency matches THAW_MAX_SEQS (batch capacity)", (env["THAW_MAX_SEQS"], props["instanceConcurrency"]))
    check(not any(k.startswith("FC_") for k in env), "no user variable starts with FC_", list(env))
    check(sum(len(k) + len(v) for k, v in env.items()) <= 4096, "user variables <= 4 KB")
    check(float(env.get("THAW_GRACE", "30")) < lc["preStop"]["timeout"], "THAW_GRACE < preStop timeout")
    check(props["logConfig"] == "auto", "logConfig auto")
    check(props["gpuConfig"]["gpuType"] == "fc.gpu.ada.1", "default GPU fc.gpu.ada.1")
    for t in GPU_TYPES_EXTRA + ["fc.gpu.tesla.1", "fc.gpu.ampere.1"]:
        check(t in text, f"GPU type {t} documented", t)
    trig = [t for t in props["triggers"] if t["triggerType"] == "http"]
    check(len(trig) == 1 and "POST" in trig[0]["triggerConfig"]["methods"], "an HTTP trigger taking POST", trig)
    return props


# ---- 2. the Dockerfile -------------------------------------------------------------------

def parse_dockerfile(path):
    """[(INSTRUCTION, raw args, stage index)], with line continuations joined; and the ARGs
    declared before the first FROM with their defaults."""
    out, stage, buf = [], -1, ""
    for line in open(path):
        s = line.rstrip("\n")
        if not buf and (not s.strip() or s.lstrip().startswith("#")):
            continue
        if buf and s.lstrip().startswith("#"):
            continue  # comments inside a continued instruction
        if s.endswith("\\"):
            buf += s[:-1] + " "
            continue
        buf += s
        ins, _, args = buf.strip().partition(" ")
        ins = ins.upper()
        if ins == "FROM":
            stage += 1
        out.append((ins, args.strip(), stage))
        buf = ""
    return out


def exec_form(args):
    args = args.strip()
    if args.startswith("["):
        return json.loads(args)
    return ["/bin/sh", "-c", args]  # shell form


def parse_env(args):
    """ENV k=v k2="v 2" (or the old `ENV k v`)."""
    parts = shlex.split(args)
    if parts and "=" not in parts[0]:
        return {parts[0]: " ".join(parts[1:])}
    return dict(p.split("=", 1) for p in parts)


def subst(s, vars_):
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: vars_.get(m.group(1) or m.group(2), m.group(0)), s)


# Paths that exist only in the image, and what stands for them in the checkout. Every key
# must be a COPY destination of the final stage (checked), so a change of layout there
# fails here instead of silently testing something else.
IMAGE_PATHS = {
    "/app/thaw": THAW,     # COPY --from=build /thaw /app/thaw  (built by `make`)
    "/app/model.thaw": None,  # COPY ${MODEL} /app/model.thaw   (the MODEL build arg's default)
}


def test_dockerfile():
    ins = parse_dockerfile(os.path.join(ROOT, "Dockerfile"))
    pre_args = {}
    for i, a, st in ins:
        if st == -1 and i == "ARG":
            k, _, v = a.partition("=")
            pre_args[k] = v
    froms = [(a, st) for i, a, st in ins if i == "FROM"]
    check(len(froms) == 2, "Dockerfile: two stages", froms)
    check(froms[0][0].split()[0] == "${BUILD_IMAGE}" and froms[1][0].split()[0] == "${RUNTIME_IMAGE}",
          "base images are build args", froms)
    b, r = pre_args.get("BUILD_IMAGE", ""), pre_args.get("RUNTIME_IMAGE", "")
    check(b.startswith("nvidia/cuda:") and b.endswith(tuple(["-devel-" + b.split("-devel-")[-1]])) and "-devel-" in b,
          "build on a CUDA devel image", b)
    check(r == b.replace("-devel-", "-runtime-"), "run on the matching CUDA runtime image", (b, r))
    final = max(st for _, _, st in ins)
    build_ins = [(i, a) for i, a, st in ins if st == 0]
    run_ins = [(i, a) for i, a, st in ins if st == final]
    build_text = "\n".join(a for _, a in build_ins)
    check(any(i == "ARG" and a.startswith("CUDA") for i, a in build_ins), "CUDA build arg (CPU variant: CUDA=0)")
    check("CUDA=1" in build_text and re.search(r"\bmake\b", build_text), "make, with CUDA=1 for the CUDA variant")
    makefile = open(os.path.join(ROOT, "Makefile")).read()
    debs = re.search(r"DEB_PKGS\s*:=\s*((?:.*\\\n)*.*)", makefile).group(1).replace("\\\n", " ").split()
    for p in debs:
        if p.endswith("-dev"):
            check(p in build_text, f"build stage installs {p} (Makefile DEB_PKGS)")
    run_text = "\n".join(a for _, a in run_ins)
    for lib in ("libmicrohttpd", "libcjson", "liblz4", "libcurl4", "libxxhash"):
        check(lib in run_text, f"runtime stage installs {lib}")

    # layer order: snapshot before binary, both in the final stage
    copies = [(n, a) for n, (i, a) in enumerate(run_ins) if i == "COPY"]
    dest = {shlex.split(a)[-1]: (n, a) for n, a in copies}
    for p in IMAGE_PATHS:
        check(p in dest, f"{p} is a COPY destination of the final stage", list(dest))
    if "/app/model.thaw" in dest and "/app/thaw" in dest:
        check(dest["/app/model.thaw"][0] < dest["/app/thaw"][0], "snapshot layer before the binary layer")
        check("--from=" in dest["/app/thaw"][1], "binary comes from the build stage")
    args = dict(pre_args)
    for i, a in run_ins:
        if i == "ARG" and "=" in a:
            k, _, v = a.partition("=")
            args[k] = v
    model_src = [subst(t, args) for t in shlex.split(dest.get("/app/model.thaw", (0, "x"))[1]) if not t.startswith("--")][0]
    IMAGE_PATHS["/app/model.thaw"] = os.path.join(ROOT, model_src)
    check(model_src == "models/smollm2-135m-instruct.thaw", "the default MODEL is the default model", model_src)

    users = [a for i, a in run_ins if i == "USER"]
    check(users and users[-1] not in ("root", "0"), "runs as a non-root user", users)
    check(any(i == "EXPOSE" and a.split()[0] == "9000" for i, a in run_ins), "EXPOSE 9000")
    hc = [a for i, a in run_ins if i == "HEALTHCHECK"]
    check(len(hc) == 1 and "/health" in hc[0], "HEALTHCHECK on /health", hc)
    ep = [a for i, a in run_ins if i == "ENTRYPOINT"]
    cmd = [a for i, a in run_ins if i == "CMD"]
    check(len(ep) == 1, "one ENTRYPOINT", ep)
    argv = exec_form(ep[-1]) + (exec_form(cmd[-1]) if cmd else [])
    check(argv[:2] == ["/app/thaw", "serve"], "ENTRYPOINT/CMD run `thaw serve`", argv)
    env = {}
    for i, a in run_ins:
        if i == "ENV":
            env.update(parse_env(a))
    check(env.get("THAW_MODEL") == "/app/model.thaw", "THAW_MODEL names the baked snapshot", env)
    check(env.get("THAW_HOST", "0.0.0.0") == "0.0.0.0", "binds 0.0.0.0 as FC requires", env)
    hc_cmd = re.sub(r"^(--\S+\s+)*CMD\s+", "", hc[0]) if hc else ""
    return argv, env, hc_cmd


def dockerignore_match(patterns, path):
    """Docker's rules: patterns are Go filepath.Match globs (`*` and `?` stay within one
    path segment, `**` spans any number), the last matching pattern wins, `!` re-includes,
    and a pattern that matches a parent directory applies to everything under it."""
    def rx(p):
        out, i = "", 0
        while i < len(p):
            if p.startswith("**/", i):
                out, i = out + "(?:.*/)?", i + 3
            elif p.startswith("**", i):
                out, i = out + ".*", i + 2
            elif p[i] == "*":
                out, i = out + "[^/]*", i + 1
            elif p[i] == "?":
                out, i = out + "[^/]", i + 1
            else:
                out, i = out + re.escape(p[i]), i + 1
        return re.compile(out)

    parts = path.split("/")
    excluded = False
    for pat in patterns:
        neg = pat.startswith("!")
        r = rx((pat[1:] if neg else pat).strip("/"))
        if any(r.fullmatch("/".join(parts[:n])) for n in range(1, len(parts) + 1)):
            excluded = not neg
    return excluded


def test_dockerignore():
    pats = [l.strip() for l in open(os.path.join(ROOT, ".dockerignore")) if l.strip() and not l.startswith("#")]
    for p in (".git/config", "build/thaw", "build/runtime/main.o", "thaw", "models/SmolLM2-135M-Instruct.Q4_1.gguf",
              ".venv/bin/python", "tests/test_cli.py", "bench/decode.c", "engine/__pycache__/x.pyc"):
        check(dockerignore_match(pats, p), f".dockerignore excludes {p}")
    need = ["Makefile", "models/smollm2-135m-instruct.thaw"]
    tracked = subprocess.run(["git", "ls-files", "runtime", "engine", "snapshot"], cwd=ROOT, capture_output=True,
                             text=True).stdout.split()
    need += tracked or ["runtime/main.c", "engine/engine.h", "snapshot/snapshot.h"]
    for p in need:
        check(not dockerignore_match(pats, p), f".dockerignore keeps {p}")


# ---- 3. the image, emulated ---------------------------------------------------------------

def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def map_path(v):
    return IMAGE_PATHS.get(v, v)


def request(port, method, path, body=None, headers=None, timeout=120):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    c.request(method, path, body=body, headers=headers or {})
    r = c.getresponse()
    data = r.read()
    c.close()
    return r, data


def test_emulation(argv, docker_env, hc_cmd, props):
    have_serve = subprocess.run([THAW, "serve", "--help"], capture_output=True, text=True, timeout=30)
    if "unknown command" in have_serve.stderr:
        skip("image emulation: ./thaw has no `serve` command yet (rerun after the server lands)")
        return
    if not os.path.exists(MODEL):
        skip("image emulation: no models/smollm2-135m-instruct.thaw (make model)")
        return
    port = free_port()
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/tmp")}
    env.update({k: map_path(v) for k, v in docker_env.items()})
    env.update({k: map_path(v) for k, v in props.get("environmentVariables", {}).items()})
    env.update({
        "FC_CUSTOM_LISTEN_PORT": str(port), "FC_FUNCTION_NAME": "thaw-llm", "FC_REGION": "cn-hangzhou",
        "FC_INSTANCE_ID": "c-test-0001", "FC_ACCOUNT_ID": "1234567890", "FC_FUNCTION_MEMORY_SIZE": "65536",
        "ALIBABA_CLOUD_ACCESS_KEY_ID": "STS.testkeyid", "ALIBABA_CLOUD_ACCESS_KEY_SECRET": "testsecret-never-logged",
        "ALIBABA_CLOUD_SECURITY_TOKEN": "testtoken-never-logged",
    })
    env["THAW_DEVICE"] = "cpu" if env.get("THAW_DEVICE") == "auto" and not os.path.exists("/dev/nvidia0") else env.get("THAW_DEVICE", "cpu")
    run_argv = [map_path(a) for a in argv]
    log = open(os.path.join(ROOT, "build", "logs", "deploy-serve.log") if os.path.isdir(os.path.join(ROOT, "build", "logs"))
               else os.devnull, "w")
    proc = subprocess.Popen(run_argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = []
    try:
        # s local invoke: wait until GET / answers anything
        deadline, up = time.time() + 60, False
        while time.time() < deadline and proc.poll() is None:
            try:
                request(port, "GET", "/", timeout=2)
                up = True
                break
            except OSError:
                time.sleep(0.1)
        check(up, "GET / answers on FC_CUSTOM_LISTEN_PORT", f"exit={proc.poll()}")
        if not up:
            return
        fc = {"x-fc-request-id": "req-invoke-1", "x-fc-function-name": "thaw-llm", "x-fc-region": "cn-hangzhou",
              "x-fc-access-key-id": "STS.testkeyid", "x-fc-access-key-secret": "testsecret-never-logged",
              "x-fc-security-token": "testtoken-never-logged"}
        body = json.dumps({"messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 8, "temperature": 0})
        r, data = request(port, "POST", "/invoke", body.encode(),
                          {**fc, "content-type": "application/octet-stream", "x-fc-control-path": "/invoke"})
        check(r.status == 200, "POST /invoke (s local invoke): 200", (r.status, data[:300]))
        check(r.getheader("x-fc-status") in (None, "200"), "x-fc-status success", r.getheader("x-fc-status"))
        try:
            j = json.loads(data)
            ok = j["choices"][0]["message"]["content"] is not None and j["usage"]["completion_tokens"] > 0
        except (ValueError, KeyError, IndexError, TypeError):
            ok = False
        check(ok, "POST /invoke returns a chat completion", data[:300])

        # FC itself calls the Initializer (s local does not), then traffic via the HTTP trigger
        r, data = request(port, "POST", "/initialize", b"", {**fc, "x-fc-request-id": "req-init",
                                                              "x-fc-control-path": "/initialize"})
        check(200 <= r.status < 300, "POST /initialize: 2xx", (r.status, data[:200]))
        r, data = request(port, "GET", "/health")
        check(r.status == 200, "GET /health: 200 when ready", (r.status, data[:200]))

        c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        body = json.dumps({"messages": [{"role": "user", "content": "Count to five."}], "max_tokens": 16,
                           "stream": True, "temperature": 0})
        c.request("POST", "/v1/chat/completions", body=body,
                  headers={**fc, "x-fc-request-id": "req-http-1", "x-fc-control-path": "/http-invoke",
                           "content-type": "application/json"})
        r = c.getresponse()
        check(r.status == 200, "HTTP trigger streaming chat: 200", r.status)
        check((r.getheader("content-type") or "").startswith("text/event-stream"), "SSE content type",
              r.getheader("content-type"))
        check((r.getheader("transfer-encoding") or "").lower() == "chunked" and r.getheader("content-length") is None,
              "chunked, no content-length (FC streams only chunked responses)", r.getheaders())
        bad = [h for h, _ in r.getheaders() if h.lower().startswith("x-fc-") or h.lower() in ("keep-alive", "server")]
        check(not bad, "no headers FC forbids in a response", bad)
        events = [l[6:] for l in r.read().decode().split("\n") if l.startswith("data: ")]
        c.close()
        check(events and events[-1] == "[DONE]", "stream ends with data: [DONE]", events[-3:])
        text = ""
        for e in events[:-1]:
            try:
                text += json.loads(e)["choices"][0]["delta"].get("content") or ""
            except (ValueError, KeyError, IndexError):
                check(False, "every SSE event is a chat.completion.chunk", e[:200])
        check(len(events) > 2 and text, "streamed several chunks of text", (len(events), text))

        # the image's HEALTHCHECK command, as Docker runs it (sh -c, container env)
        if hc_cmd:
            hr = subprocess.run(["/bin/sh", "-c", hc_cmd], env=env, capture_output=True, text=True, timeout=10)
            check(hr.returncode == 0, "HEALTHCHECK command passes", (hr.returncode, hr.stderr))

        # PreStop: drain and exit 0
        r, data = request(port, "GET", "/pre-stop", None, {**fc, "x-fc-request-id": "req-prestop"})
        check(200 <= r.status < 300, "GET /pre-stop: 2xx", (r.status, data[:200]))
        # nothing is in flight, so draining is immediate: exit now, or at the latest on the
        # SIGTERM FC sends after the hook
        try:
            rc = proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGTERM)
            try:
                rc = proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                rc = None
        check(rc == 0, "exits 0 after /pre-stop (+ SIGTERM)", rc)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        logtext = proc.stdout.read() if proc.stdout else ""
        log.write(logtext)
        log.close()
    for secret in ("testsecret-never-logged", "testtoken-never-logged"):
        check(secret not in logtext, "credentials never logged", secret)
    check("FC Invoke Start RequestId: req-invoke-1" in logtext, "FC log convention with the request id",
          logtext[-600:])


def main():
    ref = find_ref_dir()
    props = {}
    if ref is None:
        skip("s.yaml schema validation: no shared/ref/fc3-schema.json at ../shared/ref or shared/ref")
        props = function_props(yaml.safe_load(open(os.path.join(ROOT, "s.yaml"))))
    else:
        props = test_syaml(ref)
    argv, env, hc = test_dockerfile()
    test_dockerignore()
    # s.yaml spells out the same process as the image
    ccc = props.get("customContainerConfig", {})
    check(ccc.get("entrypoint", []) + ccc.get("command", []) == argv, "s.yaml entrypoint+command = Dockerfile's",
          (ccc.get("entrypoint"), ccc.get("command"), argv))
    check(props.get("environmentVariables", {}).get("THAW_MODEL") == env.get("THAW_MODEL"),
          "s.yaml THAW_MODEL = the image's snapshot")
    test_emulation(argv, env, hc, props)
    return summary("test_deploy.py")


if __name__ == "__main__":
    sys.exit(main())
