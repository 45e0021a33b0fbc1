# Runs COMMAND (a list) and passes when it exits with status 2 and prints one line
# "error: ..." containing MESSAGE on stderr.
execute_process(COMMAND ${COMMAND} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(NOT rc EQUAL 2)
  message(FATAL_ERROR "expected exit status 2, got ${rc}\nstdout: ${out}\nstderr: ${err}")
endif()
string(FIND "${err}" "error: " at)
if(NOT at EQUAL 0)
  message(FATAL_ERROR "stderr does not start with 'error: ': ${err}")
endif()
string(FIND "${err}" "${MESSAGE}" found)
if(found EQUAL -1)
  message(FATAL_ERROR "stderr does not mention '${MESSAGE}': ${err}")
endif()
