"""``python -m dllm_lesson COMMAND``: generate | eval | bench | build-models | site."""

import sys

COMMANDS = {
    "generate": ("dllm_lesson.sampling", "main_generate",
                 "animate de-masking and print the answer (several prompts: one batch)"),
    "eval": ("dllm_lesson.evaluate", "main_eval", "held-out accuracy tables"),
    "bench": ("dllm_lesson.bench", "main_bench", "speed / accuracy of every strategy"),
    "build-models": ("dllm_lesson.build", "main_build", "rebuild the shipped tiny models"),
    "site": ("dllm_lesson.site", "main_site", "build the course as an offline web site"),
}


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print("usage: python -m dllm_lesson {generate,eval,bench,build-models,site} "
              "[options]\n"
              "e.g.   python -m dllm_lesson generate \"What is the capital of Kenya?\"\n")
        for name, (_, _, doc) in COMMANDS.items():
            print(f"  {name:<14}{doc}")
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\nunknown command {argv[0]!r}")
            return 2
        return 0
    from importlib import import_module

    module, func, _ = COMMANDS[argv[0]]
    getattr(import_module(module), func)(argv[1:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
