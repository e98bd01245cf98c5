package dev.sparkmoe.gpu.launch;

/**
 * Test entry: {@code --fail-rank R --code C}: rank R prints a line and returns C at once; every other rank sleeps
 * {@code --sleep-ms} (default 120 s), so that only the launcher's fail-fast can end it early.
 */
public final class ExitEntry implements RankEntry {

    @Override
    public int run(RankContext ctx, String[] args) throws Exception {
        int failRank = -1;
        int code = 0;
        long sleep = 120_000;
        for (int i = 0; i < args.length; i++) {
            switch (args[i]) {
                case "--fail-rank" -> failRank = Integer.parseInt(args[++i]);
                case "--code" -> code = Integer.parseInt(args[++i]);
                case "--sleep-ms" -> sleep = Long.parseLong(args[++i]);
                default -> throw new IllegalArgumentException(args[i]);
            }
        }
        ctx.host().barrier(); // everyone is up before rank R leaves
        if (ctx.rank() == failRank) {
            System.out.println(ctx.tag() + ": failing on purpose with code " + code);
            return code;
        }
        System.out.println(ctx.tag() + ": sleeping");
        Thread.sleep(sleep);
        return 0;
    }
}
