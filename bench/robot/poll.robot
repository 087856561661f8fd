*** Settings ***
Documentation     The peer of bench-wire's "per case, browser": sign in to the
...               sandbox portal once, then read the status of each request
...               from the status search page, one page each (as precert's
...               browser poll_status does). Run by bench-wire from a venv it
...               creates (Robot Framework 7.5 + SeleniumLibrary).
Library           SeleniumLibrary
Library           PortalClock.py
Suite Setup       Sign In
Suite Teardown    Close All Browsers

*** Variables ***
${BASE}           http://127.0.0.1:8700
${USER}           lakeside.precert
${PASSWORD}       ${EMPTY}
${SEED}           ${EMPTY}
${REFS}           ${EMPTY}
${CLOCK}          robot-clock.txt
${CHROMEDRIVER}    /usr/bin/chromedriver

*** Test Cases ***
Poll Every Request Once
    @{refs}=    Evaluate    [r for r in $REFS.split(',') if r]
    Start Clock
    FOR    ${ref}    IN    @{refs}
        Go To    ${BASE}/portal/status?reference=${ref}
        Wait Until Page Contains Element    css:#status-results-container[data-loaded='true']    20s
        ${status}=    Get Text    css:#status-results tr[data-reference='${ref}'] td.col-status
        Should Not Be Empty    ${status}
    END
    Stop Clock    ${CLOCK}

*** Keywords ***
Sign In
    ${options}=    Evaluate    selenium.webdriver.ChromeOptions()    modules=selenium.webdriver
    Call Method    ${options}    add_argument    --headless\=new
    Call Method    ${options}    add_argument    --no-sandbox
    Call Method    ${options}    add_argument    --disable-dev-shm-usage
    Evaluate    setattr($options, 'binary_location', '/usr/bin/chromium')
    ${service}=    Evaluate    selenium.webdriver.chrome.service.Service(executable_path=$CHROMEDRIVER)    modules=selenium.webdriver.chrome.service
    Open Browser    ${BASE}/portal/login    chrome    options=${options}    service=${service}
    Input Text    id:username    ${USER}
    Input Password    id:password    ${PASSWORD}
    Click Button    id:login-submit
    Wait Until Page Contains Element    id:mfa-code
    ${code}=    Totp Code    ${SEED}
    Input Text    id:mfa-code    ${code}
    Click Button    id:mfa-submit
    Wait Until Page Contains Element    id:signed-in-as
