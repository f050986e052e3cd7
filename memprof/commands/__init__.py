"""One module per subcommand; each class has name, help, prepare_parser(parser) and run(args, console)."""

from __future__ import annotations

from memprof.commands.compare import CompareCommand
from memprof.commands.footprint import FootprintCommand
from memprof.commands.gpus import GpusCommand
from memprof.commands.lora_params import LoraParamsCommand
from memprof.commands.models import ModelsCommand
from memprof.commands.plan import PlanCommand
from memprof.commands.profile import ProfileCommand
from memprof.commands.report import ReportCommand
from memprof.commands.validate import ValidateCommand

COMMANDS = (
    FootprintCommand(),
    LoraParamsCommand(),
    ModelsCommand(),
    ProfileCommand(),
    ReportCommand(),
    CompareCommand(),
    PlanCommand(),
    ValidateCommand(),
    GpusCommand(),
)
