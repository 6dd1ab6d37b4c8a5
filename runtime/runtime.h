/* runtime.h -- the thaw process: command-line entry points.
 *
 * Each command takes argc/argv after the command name and returns a process exit status
 * (0 success, 1 failure, 2 usage error). Commands print errors as one line on stderr. */
#ifndef THAW_RUNTIME_H
#define THAW_RUNTIME_H

int rt_cmd_pack(int argc, char **argv);
int rt_cmd_inspect(int argc, char **argv);
int rt_cmd_generate(int argc, char **argv);
/* `thaw serve`: the OpenAI-compatible HTTP server (runtime/server.c; internals in server.h). */
int rt_cmd_serve(int argc, char **argv);

#endif
